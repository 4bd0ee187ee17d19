//! One log line per policy close (4001 unauthorized, 4008 slow consumer, 4010
//! ping timeout, 4029 rate limited, 1009 too big), rate-limited: at most one line per reason per
//! second, each saying how many closes of that reason it stands for. A flood
//! of abusive clients cannot flood the log, and an operator still sees why
//! sockets were closed (the counts are also in
//! `pubmesh_connections_closed_total{reason}`).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::outbox::CloseReason;

/// Shortest time between two lines of one reason.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Per-reason rate limiter: the closes seen since the last line.
pub struct CloseLog {
    slots: Mutex<Vec<(CloseReason, Option<Instant>, u64)>>,
}

impl Default for CloseLog {
    fn default() -> Self {
        CloseLog {
            slots: Mutex::new(Vec::new()),
        }
    }
}

impl CloseLog {
    /// Count one close; returns how many closes the line to write now stands
    /// for, or None when this one is folded into a later line.
    pub fn note(&self, reason: CloseReason, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock();
        let slot = match slots.iter().position(|(r, _, _)| *r == reason) {
            Some(i) => &mut slots[i],
            None => {
                slots.push((reason, None, 0));
                slots.last_mut().expect("just pushed")
            }
        };
        slot.2 += 1;
        match slot.1 {
            Some(last) if now.duration_since(last) < INTERVAL => None,
            _ => {
                slot.1 = Some(now);
                Some(std::mem::take(&mut slot.2))
            }
        }
    }
}

/// Whether a close is one of the policy closes that get a log line.
pub fn is_policy(reason: CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::Unauthorized
            | CloseReason::SlowConsumer
            | CloseReason::PingTimeout
            | CloseReason::RateLimited
            | CloseReason::TooBig
            | CloseReason::HeartbeatTimeout
            | CloseReason::BadFrame
    )
}

/// Log a server close of `client_id` if it is a policy close and the rate allows.
pub fn policy_close(reason: CloseReason, client_id: &str) {
    static LOG: std::sync::OnceLock<CloseLog> = std::sync::OnceLock::new();
    if !is_policy(reason) {
        return;
    }
    if let Some(closes) = LOG
        .get_or_init(CloseLog::default)
        .note(reason, Instant::now())
    {
        tracing::info!(
            code = reason.code(),
            reason = reason.label(),
            client_id,
            closes,
            "closed a socket by policy (closes = this one and those not logged in the last second)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_counting_the_rest() {
        let log = CloseLog::default();
        let t0 = Instant::now();
        assert_eq!(log.note(CloseReason::RateLimited, t0), Some(1));
        for i in 1..100 {
            assert_eq!(
                log.note(CloseReason::RateLimited, t0 + Duration::from_millis(i)),
                None
            );
        }
        // Another reason has its own budget.
        assert_eq!(log.note(CloseReason::TooBig, t0), Some(1));
        // The next line stands for the 99 folded closes and itself.
        assert_eq!(log.note(CloseReason::RateLimited, t0 + INTERVAL), Some(100));
        assert!(is_policy(CloseReason::SlowConsumer));
        assert!(!is_policy(CloseReason::Drain));
    }
}
