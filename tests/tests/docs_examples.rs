//! The examples in docs/*.md are run against a real node and must match byte
//! for byte, so the docs and the node cannot drift apart.
//!
//! An executable example is a fenced block whose info string holds the word
//! `example` (```` ```json example --max-ids-per-message=3 ````). The other
//! words of the info string set the node up:
//!
//! - `--flag` or `--flag=value`: passed to the node as is;
//! - `config=NAME`: `--config` with the block ```` ```toml example-config=NAME ````
//!   of the same file;
//! - `redis`: a real redis-server behind the node (emptied between examples).
//!
//! Each line of the block is one step:
//!
//! - `[name] → {…}`: socket `name` (default `a`) sends this text frame;
//! - `[name] → GET /websocket?…`: socket `name` connects (also
//!   `GET /ws/chat`, a Cells chat socket);
//! - `→ METHOD /path [body]`: an HTTP request (with the API key, unless
//!   indented `Header: value` lines follow and name `X-API-Key`; a
//!   `GET /websocket` with header lines is such a plain request);
//! - `[name] ← {…}`: the next frame socket `name` receives, exactly;
//! - `← 200 {…}`: the answer to the HTTP request (or refused upgrade) just
//!   made: status, then the body exactly;
//! - `[name] ← close 4002 disconnected`: socket `name` is closed so;
//! - empty lines and lines starting with `#` are skipped.
//!
//! `<word>` is a placeholder for what changes from run to run (ids, epochs,
//! timestamps): the first time it appears in what the node sends, it takes
//! the value found there; afterwards it must be the same, and frames and
//! requests sent carry that value. `<token:NAME>` in a sent line is an HS256
//! token (signed with the example's `--jwt-secret`) for the claims in the
//! block ```` ```json example-claims=NAME ````.
//!
//! After the last step every socket still open must have nothing more
//! queued: it sends `{"type":"connection","ref":"end-of-example"}` and the
//! next frame must answer it. A Cells socket (`/ws/…`), whose protocol
//! answers nothing, must instead stay silent for half a second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use pubmesh_tests::harness::{patience, redis_cmd, temp_dir, Client, Node, Redis, API_KEY};

/// One executable example.
struct Example {
    file: String,
    line: usize,
    options: Vec<String>,
    steps: Vec<Step>,
}

#[derive(Clone, Debug)]
struct Step {
    line: usize,
    who: String,
    kind: StepKind,
}

#[derive(Clone, Debug)]
enum StepKind {
    Send(String),
    Connect {
        target: String,
        refused: bool,
    },
    Http {
        method: String,
        target: String,
        body: Option<String>,
        headers: Vec<(String, String)>,
    },
    Receive(String),
    Answer {
        status: u16,
        body: String,
    },
    Close {
        code: u16,
        reason: String,
    },
}

/// Everything the examples of one file need.
struct Doc {
    examples: Vec<Example>,
    configs: HashMap<String, String>,
    claims: HashMap<String, String>,
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .join("docs")
}

fn parse_doc(path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).expect("read doc");
    let file = path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .to_string();
    let mut doc = Doc {
        examples: Vec::new(),
        configs: HashMap::new(),
        claims: HashMap::new(),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && !lines[end].trim_start().starts_with("```") {
            end += 1;
        }
        let body: Vec<(usize, &str)> = (start..end).map(|n| (n + 1, lines[n])).collect();
        let words: Vec<&str> = info.split_whitespace().skip(1).collect();
        if words.contains(&"example") {
            let options = words
                .iter()
                .filter(|w| **w != "example")
                .map(|w| w.to_string())
                .collect();
            doc.examples.push(Example {
                file: file.clone(),
                line: i + 1,
                options,
                steps: parse_steps(&file, &body),
            });
        }
        for w in &words {
            let text = body.iter().map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
            if let Some(name) = w.strip_prefix("example-config=") {
                doc.configs.insert(name.to_string(), text.clone());
            }
            if let Some(name) = w.strip_prefix("example-claims=") {
                doc.claims.insert(name.to_string(), text);
            }
        }
        i = end + 1;
    }
    doc
}

fn parse_steps(file: &str, body: &[(usize, &str)]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for &(line, text) in body {
        let at = || format!("{file}:{line}: {text}");
        if text.trim().is_empty() || text.trim_start().starts_with('#') {
            continue;
        }
        // `  Header: value` under an HTTP request (`GET /websocket` with
        // headers is a plain request, not an upgrade).
        if text.starts_with("  ") && !text.trim_start().starts_with(['→', '←']) {
            if let Some(step) = steps.last_mut() {
                if let StepKind::Connect { target, .. } = &step.kind {
                    step.kind = StepKind::Http {
                        method: "GET".into(),
                        target: target.clone(),
                        body: None,
                        headers: Vec::new(),
                    };
                }
            }
            let Some(Step {
                kind: StepKind::Http { headers, .. },
                ..
            }) = steps.last_mut()
            else {
                panic!("{}: a header line must follow a request", at());
            };
            let (name, value) = text
                .trim()
                .split_once(':')
                .unwrap_or_else(|| panic!("{}", at()));
            headers.push((name.trim().to_string(), value.trim().to_string()));
            continue;
        }
        let (who, rest, sends) = match (text.find('→'), text.find('←')) {
            (Some(i), _) => (&text[..i], &text[i + '→'.len_utf8()..], true),
            (None, Some(i)) => (&text[..i], &text[i + '←'.len_utf8()..], false),
            (None, None) => panic!("{}: neither → nor ←", at()),
        };
        let who = match who.trim() {
            "" => "a".to_string(),
            name => name.to_string(),
        };
        let rest = rest.trim();
        let kind = if sends {
            let http = rest.split_once(' ').is_some_and(|(method, target)| {
                method.bytes().all(|b| b.is_ascii_uppercase()) && target.starts_with('/')
            });
            if !http {
                StepKind::Send(rest.to_string())
            } else {
                let (method, rest) = rest.split_once(' ').unwrap_or_else(|| panic!("{}", at()));
                let (target, body) = match rest.split_once(' ') {
                    Some((t, b)) => (t.to_string(), Some(b.trim().to_string())),
                    None => (rest.to_string(), None),
                };
                if method == "GET"
                    && (target.starts_with("/websocket") || target.starts_with("/ws/"))
                {
                    StepKind::Connect {
                        target,
                        refused: false,
                    }
                } else {
                    StepKind::Http {
                        method: method.to_string(),
                        target,
                        body,
                        headers: Vec::new(),
                    }
                }
            }
        } else if let Some(close) = rest.strip_prefix("close ") {
            let (code, reason) = close.split_once(' ').unwrap_or((close, ""));
            StepKind::Close {
                code: code.parse().unwrap_or_else(|_| panic!("{}", at())),
                reason: reason.to_string(),
            }
        } else if rest.len() >= 3 && rest.as_bytes()[..3].iter().all(u8::is_ascii_digit) {
            StepKind::Answer {
                status: rest[..3].parse().expect("digits"),
                body: rest[3..].trim_start().to_string(),
            }
        } else {
            StepKind::Receive(rest.to_string())
        };
        steps.push(Step { line, who, kind });
    }
    // A connect answered by a status was refused.
    for i in 0..steps.len() {
        if let StepKind::Connect { .. } = steps[i].kind {
            let who = steps[i].who.clone();
            let answer = steps[i + 1..].iter().find(|s| {
                s.who == who && matches!(s.kind, StepKind::Answer { .. } | StepKind::Receive(_))
            });
            let refused = matches!(answer.map(|s| &s.kind), Some(StepKind::Answer { .. }));
            if let StepKind::Connect { refused: r, .. } = &mut steps[i].kind {
                *r = refused;
            }
        }
    }
    steps
}

/// A piece of an expected line.
enum Piece {
    Text(String),
    Var(String),
}

fn is_var(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn pieces(pattern: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        match after.find('>') {
            Some(close) if is_var(&after[..close]) => {
                text.push_str(&rest[..open]);
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Var(after[..close].to_string()));
                rest = &after[close + 1..];
            }
            _ => {
                text.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// Match `actual` against the pieces; returns the bindings made.
fn matches(
    pieces: &[Piece],
    actual: &str,
    bound: &HashMap<String, String>,
) -> Option<HashMap<String, String>> {
    let Some((first, rest)) = pieces.split_first() else {
        return actual.is_empty().then(|| bound.clone());
    };
    match first {
        Piece::Text(t) => actual
            .strip_prefix(t.as_str())
            .and_then(|a| matches(rest, a, bound)),
        Piece::Var(name) => {
            if let Some(value) = bound.get(name) {
                return actual
                    .strip_prefix(value.as_str())
                    .and_then(|a| matches(rest, a, bound));
            }
            // Shortest value first; a value never holds a `"`.
            for (end, _) in actual.char_indices().chain([(actual.len(), ' ')]) {
                let mut with = bound.clone();
                with.insert(name.clone(), actual[..end].to_string());
                if let Some(b) = matches(rest, &actual[end..], &with) {
                    return Some(b);
                }
                if actual[end..].starts_with('"') {
                    break;
                }
            }
            None
        }
    }
}

/// The state of one running example.
struct Run<'a> {
    doc: &'a Doc,
    example: &'a Example,
    node: Node,
    clients: HashMap<String, Client>,
    closed: Vec<String>,
    /// Sockets of protocols with no reply to end an example on.
    silent: Vec<String>,
    bound: HashMap<String, String>,
    answer: Option<(u16, String, String)>,
    secret: Option<String>,
}

impl Run<'_> {
    fn at(&self, step: &Step) -> String {
        format!("{}:{}", self.example.file, step.line)
    }

    /// `text` with every placeholder replaced by its value.
    fn fill(&self, step: &Step, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else { break };
            let name = &after[..close];
            let value = if let Some(claims) = name.strip_prefix("token:") {
                Some(self.token(step, claims))
            } else if is_var(name) {
                Some(self.bound.get(name).cloned().unwrap_or_else(|| {
                    panic!(
                        "{}: <{name}> is used before the node sent it",
                        self.at(step)
                    )
                }))
            } else {
                None
            };
            match value {
                Some(v) => {
                    out.push_str(&rest[..open]);
                    out.push_str(&v);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str(&rest[..open + 1]);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn token(&self, step: &Step, name: &str) -> String {
        let claims = self
            .doc
            .claims
            .get(name)
            .unwrap_or_else(|| panic!("{}: no example-claims={name} block", self.at(step)));
        let mut claims: serde_json::Value = serde_json::from_str(claims).expect("claims JSON");
        if claims.get("exp").is_none() {
            claims["exp"] = (jsonwebtoken::get_current_timestamp() + 3600).into();
        }
        let secret = self
            .secret
            .as_deref()
            .unwrap_or_else(|| panic!("{}: tokens need --jwt-secret=…", self.at(step)));
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    }

    fn expect(&mut self, step: &Step, pattern: &str, actual: &str) {
        let pieces = pieces(pattern);
        match matches(&pieces, actual, &self.bound) {
            Some(bound) => self.bound = bound,
            None => panic!(
                "{}: the node's bytes differ from the docs\n  docs: {pattern}\n  node: {actual}",
                self.at(step)
            ),
        }
    }

    async fn http(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<String>,
    ) -> (u16, String, String) {
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = client.request(method, url);
        if !headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("x-api-key") || n.eq_ignore_ascii_case("authorization")
        }) {
            request = request.header("X-API-Key", API_KEY);
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, content_type, response.text().await.expect("body"))
    }

    async fn step(&mut self, step: &Step) {
        match &step.kind {
            StepKind::Send(text) => {
                let text = self.fill(step, text);
                let at = self.at(step);
                let client = self
                    .clients
                    .get_mut(&step.who)
                    .unwrap_or_else(|| panic!("{at}: socket {} is not connected", step.who));
                client.send_text(&text).await;
            }
            StepKind::Connect { target, refused } => {
                let target = self.fill(step, target);
                let url = format!("ws://127.0.0.1:{}{target}", self.node.port);
                if *refused {
                    let headers = [
                        ("Connection", "Upgrade"),
                        ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Version", "13"),
                        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ]
                    .map(|(n, v)| (n.to_string(), v.to_string()));
                    let http = format!("{}{target}", self.node.http());
                    self.answer = Some(self.http("GET", &http, &headers, None).await);
                } else {
                    let client = Client::connect_raw(&url, None)
                        .await
                        .unwrap_or_else(|e| panic!("{}: connect: {e}", self.at(step)));
                    if target.starts_with("/ws/") {
                        self.silent.push(step.who.clone());
                    }
                    self.clients.insert(step.who.clone(), client);
                }
            }
            StepKind::Http {
                method,
                target,
                body,
                headers,
            } => {
                let url = format!("{}{}", self.node.http(), self.fill(step, target));
                let body = body.as_ref().map(|b| self.fill(step, b));
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(n, v)| (n.clone(), self.fill(step, v)))
                    .collect();
                self.answer = Some(self.http(method, &url, &headers, body).await);
            }
            StepKind::Answer { status, body } => {
                let at = self.at(step);
                let (got, content_type, text) = self
                    .answer
                    .take()
                    .unwrap_or_else(|| panic!("{at}: an answer with no request before it"));
                assert_eq!(got, *status, "{at}: status (body {text})");
                if text.starts_with('{') {
                    assert_eq!(content_type, "application/json", "{at}");
                }
                self.expect(step, body, &text);
            }
            StepKind::Receive(pattern) => {
                let at = self.at(step);
                let client = self
                    .clients
                    .get_mut(&step.who)
                    .unwrap_or_else(|| panic!("{at}: socket {} is not connected", step.who));
                let text = tokio::time::timeout(patience(10), client.recv_or_end())
                    .await
                    .unwrap_or_else(|_| panic!("{at}: no frame arrived"))
                    .unwrap_or_else(|| panic!("{at}: the socket closed"));
                self.expect(step, pattern, &text);
            }
            StepKind::Close { code, reason } => {
                let at = self.at(step);
                let client = self
                    .clients
                    .get_mut(&step.who)
                    .unwrap_or_else(|| panic!("{at}: socket {} is not connected", step.who));
                let (frames, close) = client.read_to_end(patience(20)).await;
                assert_eq!(frames, 0, "{at}: text frames before the close");
                assert_eq!(
                    close,
                    Some((*code, reason.clone())),
                    "{at}: close code and reason"
                );
                self.closed.push(step.who.clone());
            }
        }
    }

    /// Nothing more may be queued on any open socket.
    async fn finish(&mut self) {
        let mut names: Vec<String> = self.clients.keys().cloned().collect();
        names.sort();
        for name in names {
            if self.closed.contains(&name) {
                continue;
            }
            let client = self.clients.get_mut(&name).expect("client");
            if self.silent.contains(&name) {
                client
                    .expect_silence(std::time::Duration::from_millis(500))
                    .await;
                continue;
            }
            client
                .send_text(r#"{"type":"connection","ref":"end-of-example"}"#)
                .await;
            let text = tokio::time::timeout(patience(10), client.recv_or_end())
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            assert!(
                text.starts_with(r#"{"type":"connection""#)
                    && text.ends_with(r#""ref":"end-of-example"}"#),
                "{}:{}: socket {name} received a frame the example does not show: {text}",
                self.example.file,
                self.example.line
            );
        }
    }
}

async fn run_example(doc: &Doc, example: &Example, redis: &mut Option<Redis>) {
    let mut args: Vec<String> = Vec::new();
    let mut secret = None;
    for option in &example.options {
        if let Some(name) = option.strip_prefix("config=") {
            let text = doc.configs.get(name).unwrap_or_else(|| {
                panic!(
                    "{}:{}: no example-config={name} block",
                    example.file, example.line
                )
            });
            let path = temp_dir("docs").join("pubmesh.toml");
            std::fs::write(&path, text).expect("write config");
            args.push("--config".into());
            args.push(path.to_string_lossy().to_string());
        } else if option == "redis" {
            if redis.is_none() {
                *redis = Some(Redis::start().await);
            }
            let r = redis.as_ref().expect("redis");
            redis_cmd(r.port, &["FLUSHALL"]).await.expect("flushall");
            args.push("--redis-url".into());
            args.push(r.url());
        } else if option.starts_with("--") {
            if let Some(s) = option.strip_prefix("--jwt-secret=") {
                secret = Some(s.to_string());
            }
            args.push(option.clone());
        } else {
            panic!("{}:{}: unknown option {option}", example.file, example.line);
        }
    }
    eprintln!("example {}:{}", example.file, example.line);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Node::start(&args).await;
    let mut run = Run {
        doc,
        example,
        node,
        clients: HashMap::new(),
        closed: Vec::new(),
        silent: Vec::new(),
        bound: HashMap::new(),
        answer: None,
        secret,
    };
    for step in &example.steps {
        run.step(step).await;
    }
    if let Some((status, _, body)) = run.answer.take() {
        panic!(
            "{}:{}: an HTTP answer the example does not show: {status} {body}",
            example.file, example.line
        );
    }
    run.finish().await;
}

#[test]
fn placeholders_bind_once_and_then_must_repeat() {
    let bound = HashMap::new();
    let p = pieces(r#"{"id":"<a>","again":"<a>","n":<n>}"#);
    let b = matches(&p, r#"{"id":"x:1","again":"x:1","n":42}"#, &bound).expect("match");
    assert_eq!(b["a"], "x:1");
    assert_eq!(b["n"], "42");
    assert!(matches(&p, r#"{"id":"x:1","again":"x:2","n":42}"#, &bound).is_none());
    let empty = pieces(r#"{"epoch":"<e>"}"#);
    assert_eq!(
        matches(&empty, r#"{"epoch":""}"#, &bound).expect("match")["e"],
        ""
    );
    // Not placeholders: `<` in text, and names with capitals or spaces.
    assert!(matches(&pieces("a <b c> <B>"), "a <b c> <B>", &bound).is_some());
}

#[tokio::test]
async fn every_example_in_the_docs_matches_the_node() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(docs_dir())
        .expect("docs dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut redis = None;
    let mut count = 0;
    let mut in_protocol = 0;
    for file in &files {
        let doc = parse_doc(file);
        for example in &doc.examples {
            run_example(&doc, example, &mut redis).await;
            count += 1;
            if example.file == "protocol.md" {
                in_protocol += 1;
            }
        }
    }
    eprintln!("{count} examples matched the node");
    assert!(
        in_protocol >= 20,
        "docs/protocol.md has {in_protocol} executable examples"
    );
}

#[test]
fn every_error_code_is_documented() {
    let text = std::fs::read_to_string(docs_dir().join("protocol.md")).expect("protocol.md");
    let mut codes: Vec<&str> = pubmesh_node::metrics::labels::ERROR_CODES.to_vec();
    codes.extend([
        "draining",
        "capacity",
        "method_not_allowed",
        "too_large",
        "relay_unavailable",
        "timeout",
    ]);
    for code in codes {
        assert!(
            text.contains(&format!("| `{code}`")) || text.contains(&format!("/ `{code}`")),
            "error code {code} is missing from the tables of docs/protocol.md"
        );
    }
}
