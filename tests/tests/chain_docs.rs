//! The exchanges in docs/chain.md (blocks ```` ```text chain-example ````)
//! are run against a real node and must match byte for byte.
//!
//! Each line of a block is one step:
//!
//! - `→ GET /socket/sse?sid=TAB`: tab `TAB` opens its event stream (with
//!   its cookie, once it has one);
//! - `→ POST /socket/sse?sid=TAB BODY`: tab `TAB` posts `BODY`;
//! - `→ POST /api/… BODY`: a server API call (with the API key);
//! - `← STATUS [TEXT]`: the answer to the last request: its status, then
//!   the body exactly (for a `GET`, the `Set-Cookie` value up to its first
//!   `;`, or nothing when none was set);
//! - `TAB ← data: JSON`: the next event on tab `TAB`'s stream, exactly;
//! - `TAB ✕ …`: tab `TAB`'s stream drops.
//!
//! `<word>` in an expected line matches letters and digits; the first time it
//! binds, later uses must repeat the value. The other words of the info
//! string are the node's flags. After the last step every open stream must
//! have nothing more queued.

use std::collections::HashMap;
use std::path::Path;

use pubmesh_tests::harness::{patience, Node, API_KEY};
use pubmesh_tests::sse::Sse;

struct Example {
    line: usize,
    flags: Vec<String>,
    steps: Vec<(usize, String)>,
}

fn examples() -> Vec<Example> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/chain.md");
    let text = std::fs::read_to_string(path).expect("docs/chain.md");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```text chain-example") else {
            i += 1;
            continue;
        };
        let flags = info.split_whitespace().map(str::to_string).collect();
        let mut steps = Vec::new();
        let start = i + 1;
        i = start;
        while !lines[i].starts_with("```") {
            if !lines[i].trim().is_empty() {
                steps.push((i + 1, lines[i].to_string()));
            }
            i += 1;
        }
        out.push(Example {
            line: start,
            flags,
            steps,
        });
    }
    out
}

/// Does `actual` match `pattern`? Binds `<word>` placeholders.
fn matches(pattern: &str, actual: &str, bound: &mut HashMap<String, String>) -> bool {
    let Some(open) = pattern.find('<') else {
        return pattern == actual;
    };
    let Some(close) = pattern[open..].find('>').map(|c| open + c) else {
        return pattern == actual;
    };
    let (head, name, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let Some(rest) = actual.strip_prefix(head) else {
        return false;
    };
    let len = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let value = &rest[..len];
    if value.is_empty() || bound.get(name).is_some_and(|v| v != value) {
        return false;
    }
    bound.insert(name.to_string(), value.to_string());
    matches(tail, &rest[len..], bound)
}

/// The request part of `→ METHOD TARGET [BODY]`.
fn request(rest: &str) -> (&str, &str, Option<&str>) {
    let (method, rest) = rest.split_once(' ').expect("METHOD TARGET");
    match rest.split_once(' ') {
        Some((target, body)) => (method, target, Some(body)),
        None => (method, rest, None),
    }
}

fn sid(target: &str) -> &str {
    target
        .split_once("sid=")
        .map(|(_, s)| s)
        .expect("a /socket/sse target has ?sid=")
}

async fn run(example: &Example) {
    let flags: Vec<&str> = example.flags.iter().map(String::as_str).collect();
    let node = Node::start(&flags).await;
    let mut tabs: HashMap<String, Sse> = HashMap::new();
    let mut bound = HashMap::new();
    let mut answer: Option<(u16, String)> = None;
    for (line, text) in &example.steps {
        let at = format!("docs/chain.md:{line}: {text}");
        if let Some(rest) = text.strip_prefix("→ ") {
            let (method, target, body) = request(rest);
            answer = Some(if target.starts_with("/socket/sse") {
                let sid = sid(target);
                let tab = tabs
                    .entry(sid.to_string())
                    .or_insert_with(|| Sse::new(&node.http(), sid));
                if method == "GET" {
                    let status = tab.connect("").await;
                    let cookie = tab
                        .last_headers
                        .get("set-cookie")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next())
                        .unwrap_or("")
                        .to_string();
                    (status, cookie)
                } else {
                    tab.post(body.unwrap_or("")).await
                }
            } else {
                let response = reqwest::Client::new()
                    .request(method.parse().expect("method"), node.http() + target)
                    .header("x-api-key", API_KEY)
                    .header("content-type", "application/json")
                    .body(body.unwrap_or("").to_string())
                    .send()
                    .await
                    .expect("API call");
                let status = response.status().as_u16();
                (status, response.text().await.expect("body"))
            });
        } else if let Some(rest) = text.strip_prefix("← ") {
            let (status, expected) = rest.split_once(' ').unwrap_or((rest, ""));
            let (got, body) = answer.take().unwrap_or_else(|| panic!("{at}: no request"));
            assert_eq!(got.to_string(), status, "{at}: status (body {body})");
            assert!(
                matches(expected, &body, &mut bound),
                "{at}\n  docs: {expected}\n  node: {body}"
            );
        } else if let Some((tab, rest)) = text.split_once(" ← data: ") {
            let sse = tabs.get_mut(tab).unwrap_or_else(|| panic!("{at}: no tab"));
            let event = sse
                .next_raw(patience(10))
                .await
                .unwrap_or_else(|| panic!("{at}: no event"));
            assert!(
                matches(rest, &event, &mut bound),
                "{at}\n  docs: {rest}\n  node: {event}"
            );
        } else if let Some((tab, _)) = text.split_once(" ✕") {
            tabs.get_mut(tab)
                .unwrap_or_else(|| panic!("{at}: no tab"))
                .drop_stream();
        } else {
            panic!("{at}: not a step");
        }
    }
    if let Some((status, body)) = answer {
        panic!(
            "docs/chain.md:{}: an answer the example does not show: {status} {body}",
            example.line
        );
    }
    // Nothing more queued on the open streams: a leave of a topic never
    // joined is answered at once, and must be the next event.
    for (name, tab) in tabs.iter_mut().filter(|(_, t)| t.last_status == 200) {
        let (status, _) = tab.post(r#"[0,0,0,"end-of-example","_leave"]"#).await;
        if status == 200 {
            assert_eq!(
                tab.next_raw(patience(10)).await.as_deref(),
                Some("[1,0,0,0]"),
                "docs/chain.md:{}: tab {name} received an event the example does not show",
                example.line
            );
        }
    }
}

#[tokio::test]
async fn every_chain_example_in_the_docs_matches_the_node() {
    let examples = examples();
    assert!(examples.len() >= 2, "docs/chain.md has executable examples");
    for example in &examples {
        eprintln!("example docs/chain.md:{}", example.line);
        run(example).await;
    }
}

#[test]
fn placeholders_bind_once() {
    let mut bound = HashMap::new();
    assert!(matches("a=<id>; b=<id>", "a=x1; b=x1", &mut bound));
    assert!(!matches("c=<id>", "c=x2", &mut bound));
    assert!(!matches("[1,2,3,0]", "[1,2,3,1]", &mut HashMap::new()));
}
