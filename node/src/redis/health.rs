//! Readiness of the Redis relay, checked actively.
//!
//! Every `--relay-probe-ms` the node sends, to each Redis server, a `PING`
//! (with the probe interval as its deadline) and a canary: a heartbeat
//! envelope published to the node's own inbox topic on that server, which
//! the node's subscriber must receive back. A server is up while its
//! connections are open, its subscriptions are in place, and both the last
//! `PING` and the last canary echo are younger than [`STALE_PROBES`] probe
//! intervals. A frozen Redis (SIGSTOP) therefore turns `/readyz` to 503 and
//! `pubmesh_relay_up` to 0 within about three probe intervals, and back as
//! soon as a probe succeeds again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How many probe intervals a `PING` reply or a canary echo stays valid.
pub const STALE_PROBES: u32 = 3;

#[derive(Default)]
struct Probe {
    ping_ok: Option<Instant>,
    ping_error: Option<String>,
    /// The canary in flight: its sequence number and when it was sent.
    canary_sent: Option<(u64, Instant)>,
    canary_ok: Option<Instant>,
}

/// What the node knows about one Redis server's health.
pub struct ServerHealth {
    pub url: String,
    probe: Mutex<Probe>,
    /// Subscriber connected and every needed subscription in place since the
    /// last (re)connect.
    synced: AtomicBool,
}

impl ServerHealth {
    pub fn new(url: String) -> Self {
        ServerHealth {
            url,
            probe: Mutex::new(Probe::default()),
            synced: AtomicBool::new(false),
        }
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn ping_result(&self, result: Result<(), String>) {
        let mut probe = self.probe.lock();
        match result {
            Ok(()) => {
                probe.ping_ok = Some(Instant::now());
                probe.ping_error = None;
            }
            Err(e) => probe.ping_error = Some(e),
        }
    }

    pub fn canary_sent(&self, seq: u64) {
        let mut probe = self.probe.lock();
        if probe.canary_sent.is_none() {
            probe.canary_sent = Some((seq, Instant::now()));
        }
    }

    /// A canary came back; true if it was this server's.
    pub fn canary_received(&self, seq: u64) -> bool {
        let mut probe = self.probe.lock();
        match probe.canary_sent {
            Some((sent, _)) if sent <= seq => {
                probe.canary_sent = None;
                probe.canary_ok = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Why this server is not usable, or `None` when it is.
    pub fn problem(&self, connected: bool, interval: Duration) -> Option<String> {
        if !connected {
            return Some("not connected".into());
        }
        if !self.synced() {
            return Some("subscriptions not in place".into());
        }
        let stale = interval * STALE_PROBES;
        let probe = self.probe.lock();
        let age = |at: Option<Instant>| at.map(|t| t.elapsed());
        match age(probe.ping_ok) {
            None => return Some("no PING reply yet".into()),
            Some(a) if a > stale => {
                return Some(format!(
                    "no PING reply for {:.1} s{}",
                    a.as_secs_f64(),
                    probe
                        .ping_error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ))
            }
            _ => {}
        }
        match age(probe.canary_ok) {
            None => Some("no canary echo yet".into()),
            Some(a) if a > stale => Some(format!("no canary echo for {:.1} s", a.as_secs_f64())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_up_only_with_fresh_ping_and_canary() {
        let h = ServerHealth::new("redis://x".into());
        let interval = Duration::from_secs(1);
        assert!(h.problem(false, interval).is_some());
        assert!(h.problem(true, interval).unwrap().contains("subscriptions"));
        h.set_synced(true);
        assert!(h.problem(true, interval).unwrap().contains("PING"));
        h.ping_result(Ok(()));
        assert!(h.problem(true, interval).unwrap().contains("canary"));
        h.canary_sent(7);
        assert!(!h.canary_received(6));
        assert!(h.canary_received(7));
        assert_eq!(h.problem(true, interval), None);
        assert!(h.problem(true, Duration::ZERO).is_some());
    }
}
