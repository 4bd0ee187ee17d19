//! Real JavaScript clients for compatibility tests: node scripts in
//! `tests/js/` (the official `phoenix`, `socket.io-client` 4 and 2, `ws`)
//! and pages in headless Chromium (Debian's `chromium` driven by
//! `puppeteer-core`).
//!
//! A script reports what happens as JSON lines on stdout
//! (`{"event":"frame",…}`, see `tests/js/report.js`); [`Script`] reads them
//! in the background and hands them out with deadlines. Lines written with
//! [`Script::send_line`] reach the script's stdin (commands). Scripts are
//! killed when their handle drops.
//!
//! `./scripts/test` installs node, npm and chromium and runs `npm ci` in
//! `tests/js`; [`Script::spawn`] also runs `npm ci` once when
//! `tests/js/node_modules` is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// `tests/js`.
pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// The Chromium the browser helper drives: `$PUBMESH_CHROMIUM`, else
/// `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("PUBMESH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

static INSTALL: Mutex<bool> = Mutex::new(false);

/// Make sure `tests/js/node_modules` exists (`npm ci` once per test binary
/// if it does not).
pub fn ensure_modules() {
    let mut done = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let dir = js_dir();
    if !dir.join("node_modules").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm (install node and npm, or run ./scripts/test)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    *done = true;
}

/// A running node script.
pub struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every event seen so far (for failure messages).
    seen: Vec<Value>,
    stderr: std::sync::Arc<Mutex<String>>,
    /// A browser profile to remove when the script is dropped (a script
    /// killed by a failing test cannot clean up after itself).
    profile: Option<PathBuf>,
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(dir) = self.profile.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Script {
    /// Run `node tests/js/<script> args…`.
    pub fn spawn(script: &str, args: &[&str]) -> Script {
        Script::spawn_with(script, args, None)
    }

    fn spawn_with(script: &str, args: &[&str], profile: Option<PathBuf>) -> Script {
        ensure_modules();
        let mut command = Command::new("node");
        if let Some(dir) = &profile {
            command.env("PUBMESH_CHROMIUM_PROFILE", dir);
        }
        let mut child = command
            .arg(script)
            .args(args)
            .current_dir(js_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (install node, or run ./scripts/test)");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "stdout", "text": line}));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let err_text = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = err_text.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 16_384 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Script {
            name: format!("{script} {}", args.join(" ")),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr: err_text,
            profile,
        }
    }

    /// Run a page script in headless Chromium (`tests/js/browser.js`):
    /// `page` is a file under `tests/js/pages/`, `args` its argument, `tags`
    /// scripts (paths relative to `tests/js`) loaded into the page first.
    pub fn browser(page: &str, args: &Value, tags: &[&str]) -> Script {
        let chromium = chromium_path();
        assert!(
            chromium.exists(),
            "{} not found: install Debian's chromium (./scripts/test does) or set PUBMESH_CHROMIUM",
            chromium.display()
        );
        let page = format!("pages/{page}");
        let args = args.to_string();
        let mut all: Vec<&str> = vec![&page, &args];
        all.extend_from_slice(tags);
        let profile = crate::harness::temp_dir("chromium");
        Script::spawn_with("browser.js", &all, Some(profile))
    }

    /// Send one line to the script's stdin.
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to script");
        stdin.flush().await.expect("flush script stdin");
    }

    /// The next event, or panic after `within` (also if the script ends or
    /// reports `fatal`).
    pub async fn next_event(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                if v["event"] == "fatal" {
                    self.fail(&format!("fatal: {}", v["error"]));
                }
                v
            }
            Ok(None) => self.fail("script ended"),
            Err(_) => self.fail(&format!("no event within {within:?}")),
        }
    }

    /// Skip events until one matches; returns it.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut matches: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.fail(&format!("timed out after {within:?} waiting for {what}"));
            }
            let v = self.next_event(left).await;
            if matches(&v) {
                return v;
            }
        }
    }

    /// Skip events until one named `event` arrives.
    pub async fn wait_event(&mut self, event: &str, within: Duration) -> Value {
        self.wait_for(event, within, |v| v["event"] == event).await
    }

    fn fail(&self, why: &str) -> ! {
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let seen: Vec<String> = self.seen.iter().map(|v| v.to_string()).collect();
        panic!(
            "{}: {why}\nevents so far:\n{}\nstderr:\n{stderr}",
            self.name,
            seen.join("\n")
        );
    }

    /// Close stdin (scripts exit when it closes) and wait for the exit.
    pub async fn finish(mut self, within: Duration) -> std::process::ExitStatus {
        drop(self.stdin.take());
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for script"),
            Err(_) => self.fail("did not exit after stdin closed"),
        }
    }
}
