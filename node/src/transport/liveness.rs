//! Is the peer still there? The server pings every interval; a connection
//! that sends nothing at all (a pong or any other frame: every inbound frame
//! counts) within the pong timeout of a ping is dead, and so is one the
//! server has heard nothing from for the interval plus the timeout (a
//! backstop for a writer that cannot get its ping out, the socket being
//! full). Either way the connection closes with 4010 `ping timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Liveness;
use crate::outbox::CloseReason;

/// When the client last sent anything, shared by the reader (which marks
/// it), the writer and the watchdog (which read it). Milliseconds since the
/// connection opened, so it fits an atomic.
pub struct Heard {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Default for Heard {
    fn default() -> Self {
        Heard::new()
    }
}

impl Heard {
    pub fn new() -> Self {
        Heard {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// A frame arrived.
    pub fn now(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the last frame arrived (the opening, before any).
    pub fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// What the writer should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send a ping.
    Ping,
    /// A ping went unanswered past the deadline.
    Dead,
}

/// The writer's ping schedule.
pub struct Pings {
    liveness: Liveness,
    next: Instant,
    /// The oldest ping not answered yet (nothing heard since it was sent).
    unanswered: Option<Instant>,
}

impl Pings {
    pub fn new(liveness: Liveness) -> Self {
        Pings {
            liveness,
            next: Instant::now() + liveness.interval,
            unanswered: None,
        }
    }

    /// Check the schedule against what has been heard.
    pub fn due(&mut self, heard: &Heard) -> Due {
        let now = Instant::now();
        if let Some(sent) = self.unanswered {
            // Compare at the clock's millisecond resolution of `Heard`.
            if heard.last() + Duration::from_millis(1) > sent {
                self.unanswered = None;
            } else if now >= sent + self.liveness.timeout {
                return Due::Dead;
            }
        }
        if now >= self.next {
            self.next = now + self.liveness.interval;
            self.unanswered.get_or_insert(now);
            return Due::Ping;
        }
        Due::Nothing
    }

    /// When [`Pings::due`] may have something to say.
    pub fn next_event(&self) -> Instant {
        match self.unanswered {
            Some(sent) => self.next.min(sent + self.liveness.timeout),
            None => self.next,
        }
    }
}

/// Resolves with [`CloseReason::PingTimeout`] once nothing has been heard
/// for the interval plus the timeout; never without liveness.
pub async fn watchdog(liveness: Option<Liveness>, heard: &Heard) -> CloseReason {
    let Some(liveness) = liveness else {
        return std::future::pending().await;
    };
    loop {
        let deadline = heard.last() + liveness.bound();
        if Instant::now() >= deadline {
            return CloseReason::PingTimeout;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness() -> Liveness {
        Liveness {
            interval: Duration::from_secs(25),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_every_interval_and_dead_when_unanswered_past_the_timeout() {
        let heard = Heard::new();
        let mut pings = Pings::new(liveness());
        assert_eq!(pings.due(&heard), Due::Nothing);
        tokio::time::sleep_until(pings.next_event()).await;
        assert_eq!(pings.due(&heard), Due::Ping);
        // 9 s later, still silent: not yet.
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(pings.due(&heard), Due::Nothing);
        assert_eq!(pings.next_event(), Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(pings.due(&heard), Due::Dead);
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_after_a_ping_answers_it() {
        let heard = Heard::new();
        let mut pings = Pings::new(liveness());
        tokio::time::advance(Duration::from_secs(25)).await;
        assert_eq!(pings.due(&heard), Due::Ping);
        tokio::time::advance(Duration::from_secs(3)).await;
        heard.now();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(pings.due(&heard), Due::Nothing);
        // The next ping, answered in time, and so on.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(pings.due(&heard), Due::Ping);
        tokio::time::advance(Duration::from_secs(9)).await;
        heard.now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(pings.due(&heard), Due::Nothing);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_after_interval_plus_timeout_of_silence() {
        let heard = Heard::new();
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        heard.now();
        let reason = watchdog(Some(liveness()), &heard).await;
        assert_eq!(reason, CloseReason::PingTimeout);
        assert_eq!(Instant::now() - started, Duration::from_secs(20 + 35));
    }
}
