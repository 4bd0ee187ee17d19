//! A TCP proxy the tests control, put between a node and Redis to make
//! network faults on one link while the others stay healthy.
//!
//! Modes: [`Mode::Pass`] forwards; [`Mode::Stall`] keeps every connection
//! open but forwards nothing (bytes wait in the proxy) until the mode
//! changes; [`Mode::Slow`] delays every chunk; [`Proxy::cut`] closes every
//! open connection and refuses new ones until [`Proxy::heal`];
//! [`Mode::Hold`] forwards everything except requests containing a pattern
//! (one connection's command naming one key), which wait, with everything
//! that connection sends after them, until the mode changes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the proxy treats traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Stall,
    Slow(Duration),
    /// Connections are closed and new ones refused.
    Cut,
    /// Like `Pass`, but a client → server chunk containing this pattern, and
    /// everything after it on that connection, waits until the mode changes.
    Hold(&'static str),
}

/// A proxy from a free loopback port to `127.0.0.1:{upstream}`.
pub struct Proxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (tx, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(tx);
        let accept_mode = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *accept_mode.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, accept_mode.subscribe(), true));
                tokio::spawn(pipe(sr, cw, accept_mode.subscribe(), false));
            }
        });
        Proxy { port, mode, task }
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn stall(&self) {
        self.set(Mode::Stall);
    }

    pub fn slow(&self, delay: Duration) {
        self.set(Mode::Slow(delay));
    }

    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    pub fn heal(&self) {
        self.set(Mode::Pass);
    }

    /// Hold requests containing `pattern` (see [`Mode::Hold`]).
    pub fn hold(&self, pattern: &'static str) {
        self.set(Mode::Hold(pattern));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        self.task.abort();
    }
}

/// Bytes of the previous chunk kept for [`contains`] (longer than any pattern).
const TAIL: usize = 256;

/// Does `chunk`, after the `tail` of the previous chunk, contain `pattern`?
fn contains(tail: &[u8], chunk: &[u8], pattern: &str) -> bool {
    let joined = [tail, chunk].concat();
    let pattern = pattern.as_bytes();
    !pattern.is_empty() && joined.windows(pattern.len()).any(|w| w == pattern)
}

/// Copy one direction (`upstream`: client → server), obeying the mode.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // The end of the previous chunk, so a pattern split between two reads matches.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        // Wait while stalled; leave when cut.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Cut => return,
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // What was read while the mode changed still obeys the new mode.
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Cut => return,
                Mode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::Hold(pattern) if upstream && contains(&tail, &buf[..n], pattern) => {
                    // Nothing more is read from this connection meanwhile.
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Pass | Mode::Hold(_) => break,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let keep = n.min(TAIL);
        tail.clear();
        tail.extend_from_slice(&buf[n - keep..n]);
    }
}
