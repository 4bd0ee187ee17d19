//! The Engine.IO ping schedule of a connection, for WebSocket and polling
//! sessions alike.

use std::time::{Duration, Instant};

use super::engineio::Eio;
use crate::config::socketio::SocketIo;

/// The Engine.IO ping schedule of one connection: the server pings (v4),
/// or the client does and the server watches (v3).
#[derive(Clone, Debug)]
pub struct Pings {
    interval: Duration,
    timeout: Duration,
    next: Instant,
    /// A ping is out, to be answered by then.
    answer_by: Option<Instant>,
    /// v3: the client pings; `next` is when its next ping is late.
    client_pings: bool,
}

/// What the ping schedule wants now.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    Ping,
    Dead,
}

impl Pings {
    pub fn new(config: &SocketIo, eio: Eio) -> Pings {
        let client_pings = eio == Eio::V3;
        let first = if client_pings {
            config.ping_interval + config.ping_timeout
        } else {
            config.ping_interval
        };
        Pings {
            interval: config.ping_interval,
            timeout: config.ping_timeout,
            next: Instant::now() + first,
            answer_by: None,
            client_pings,
        }
    }

    /// How often to look at the schedule.
    pub fn tick(config: &SocketIo) -> Duration {
        (config.ping_interval.min(config.ping_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// When something is next due.
    pub fn next_event(&self) -> Instant {
        self.answer_by.unwrap_or(self.next)
    }

    pub fn due(&mut self, now: Instant) -> Due {
        if self.client_pings {
            return if now >= self.next {
                Due::Dead
            } else {
                Due::Nothing
            };
        }
        match self.answer_by {
            Some(by) if now >= by => Due::Dead,
            Some(_) => Due::Nothing,
            None if now >= self.next => {
                self.answer_by = Some(now + self.timeout);
                Due::Ping
            }
            None => Due::Nothing,
        }
    }

    /// v3: the client pinged; its next ping is due within an interval (and
    /// the timeout).
    pub fn client_ping(&mut self, now: Instant) {
        if self.client_pings {
            self.next = now + self.interval + self.timeout;
        }
    }

    /// A pong arrived: the next ping is an interval away.
    pub fn pong(&mut self, now: Instant) {
        if self.answer_by.take().is_some() {
            self.next = now + self.interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_wait_for_their_pong_then_keep_the_interval() {
        let config = SocketIo {
            ping_interval: Duration::from_millis(100),
            ping_timeout: Duration::from_millis(50),
            ..SocketIo::default()
        };
        let mut p = Pings::new(&config, Eio::V4);
        let t0 = Instant::now();
        assert_eq!(p.due(t0), Due::Nothing);
        let t1 = t0 + Duration::from_millis(101);
        assert_eq!(p.due(t1), Due::Ping);
        assert_eq!(p.due(t1 + Duration::from_millis(10)), Due::Nothing);
        p.pong(t1 + Duration::from_millis(20));
        assert_eq!(p.due(t1 + Duration::from_millis(100)), Due::Nothing);
        let t2 = t1 + Duration::from_millis(121);
        assert_eq!(p.due(t2), Due::Ping);
        assert_eq!(p.due(t2 + Duration::from_millis(50)), Due::Dead);

        // v3: the client pings, and is dead when a ping is late.
        let mut p = Pings::new(&config, Eio::V3);
        assert_eq!(p.due(t0 + Duration::from_millis(140)), Due::Nothing);
        p.client_ping(t0 + Duration::from_millis(100));
        assert_eq!(p.due(t0 + Duration::from_millis(240)), Due::Nothing);
        assert_eq!(p.due(t0 + Duration::from_millis(251)), Due::Dead);
    }
}
