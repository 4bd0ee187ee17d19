//! The one error type of mesh operations, with stable codes.

use crate::history::HistoryError;

/// Why a mesh operation failed. Each front-end maps these to its own wire
/// error; [`MeshError::code`] is stable and is what the native protocol and
/// the server API send as `code`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The node is draining and takes no new connections.
    #[error("the node is shutting down; connect to another node")]
    Draining,
    /// `--max-connections` connections are open.
    #[error("the node holds its maximum of connections (--max-connections)")]
    AtCapacity,
    /// A request the mesh refuses as a whole; the message says why.
    #[error("{0}")]
    BadRequest(String),
    /// Policy refuses it; the message names the rule.
    #[error("{0}")]
    Forbidden(String),
    /// `--max-channels-per-connection` reached.
    #[error("a connection may be in at most {0} channels")]
    TooManyChannels(usize),
    #[error("channel {0:?} keeps no history")]
    NoHistory(String),
    #[error("channel {0:?} has no presence")]
    NoPresence(String),
    /// A socket changed too many distinct channels in the current window
    /// (`--client-channel-churn`); the message says when to try again.
    #[error("{0}")]
    RateLimited(String),
    /// A history position ahead of the channel.
    #[error("position {offset} is ahead of the channel (latest {top})")]
    BadPosition { offset: u64, top: u64 },
    /// History or presence storage failed; the message says which.
    #[error("{0}")]
    Unavailable(String),
    /// No valid token where `--require-auth` needs one (the connection is
    /// being closed with 4001).
    #[error("unauthorized")]
    Unauthorized,
}

impl MeshError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            MeshError::Draining => "draining",
            MeshError::AtCapacity => "capacity",
            MeshError::BadRequest(_) => "bad_request",
            MeshError::Forbidden(_) => "forbidden",
            MeshError::TooManyChannels(_) => "too_many_channels",
            MeshError::RateLimited(_) => "rate_limited",
            MeshError::NoHistory(_) => "no_history",
            MeshError::NoPresence(_) => "no_presence",
            MeshError::BadPosition { .. } => "bad_position",
            MeshError::Unavailable(_) => "unavailable",
            MeshError::Unauthorized => "unauthorized",
        }
    }
}

impl From<HistoryError> for MeshError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::BadPosition { offset, top } => MeshError::BadPosition { offset, top },
            e @ HistoryError::Unavailable(_) => MeshError::Unavailable(e.to_string()),
        }
    }
}
