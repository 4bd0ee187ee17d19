//! Why the server closes a connection, and the close code it sends.

/// Why a connection is being closed by the server, with its documented close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is draining (SIGTERM): 1012 "reconnect".
    Drain,
    /// No valid token under `--require-auth`: 4001.
    Unauthorized,
    /// `POST /api/disconnect`: 4002.
    Disconnected,
    /// The outbox overflowed: 4008.
    SlowConsumer,
    /// Too many frames per second: 4029.
    RateLimited,
    /// A frame over `--max-message-size`: 1009.
    TooBig,
    /// A text frame that is not valid UTF-8: 1007.
    InvalidUtf8,
    /// A WebSocket protocol violation (reserved opcode or bits, unmasked
    /// client frame, bad control frame): 1002.
    ProtocolError,
    /// Nothing from the client within `--pong-timeout-seconds` of a ping
    /// (or for the ping interval plus that): 4010.
    PingTimeout,
    /// A Phoenix socket sent nothing (not even a heartbeat) for
    /// `--phoenix-heartbeat-timeout-ms`: 4408.
    HeartbeatTimeout,
    /// A frame the socket's protocol cannot read at all (e.g. a Phoenix
    /// frame that is not a 5-element array): 4400.
    BadFrame,
    /// The subscriptions a connection needs from the start (its user, a
    /// native connection's own channel) were not in place cluster-wide
    /// within `--relay-join-timeout-ms`: 1013 "try again later".
    Unavailable,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Drain => 1012,
            CloseReason::TooBig => 1009,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::ProtocolError => 1002,
            CloseReason::Unauthorized => 4001,
            CloseReason::Disconnected => 4002,
            CloseReason::SlowConsumer => 4008,
            CloseReason::RateLimited => 4029,
            CloseReason::PingTimeout => 4010,
            CloseReason::HeartbeatTimeout => 4408,
            CloseReason::BadFrame => 4400,
            CloseReason::Unavailable => 1013,
        }
    }

    /// The close frame's reason text; also the metric label.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Drain => "reconnect",
            CloseReason::TooBig => "message too big",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Disconnected => "disconnected",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::RateLimited => "rate limited",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::BadFrame => "bad frame",
            CloseReason::Unavailable => "try again later",
        }
    }

    /// Label for `pubmesh_connections_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Drain => "drain",
            CloseReason::TooBig => "too_big",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Disconnected => "disconnected",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::Unavailable => "unavailable",
        }
    }
}
