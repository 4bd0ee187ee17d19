//! Channel history: every publication to a history-enabled channel gets a
//! stable position (an offset that grows by one, and an epoch that changes
//! whenever the history is lost), so a reconnecting client can ask for what it
//! missed.
//!
//! [`MemoryHistory`] keeps a ring per channel in this process (one node, or
//! the nodes of an in-process bus); the Redis store keeps a stream per
//! channel, and the Redis relay appends and publishes in one atomic step.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::BoxFuture;
pub use crate::delivery::Position;
use crate::idempotency::KeyWindow;
use crate::policy::ChannelOptions;

/// One stored publication: its offset, the `data` object's JSON text, and
/// its event name when it was published with one (replayed to protocols
/// that name events, such as Socket.IO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    pub offset: u64,
    pub data: Utf8Bytes,
    pub event: Option<std::sync::Arc<str>>,
}

/// The answer to a history read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// In offset order.
    pub publications: Vec<Publication>,
    /// The channel's latest position.
    pub top: Position,
    /// For a read `since` a position: true when `publications` is exactly
    /// everything after it; false when the history no longer covers it
    /// (trimmed, expired, or another epoch) and `publications` is empty.
    pub recovered: bool,
}

/// Why a history call failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("position {offset} is ahead of the channel (latest {top})")]
    BadPosition { offset: u64, top: u64 },
    #[error("history storage unavailable: {0}")]
    Unavailable(String),
}

impl HistoryError {
    pub fn code(&self) -> &'static str {
        match self {
            HistoryError::BadPosition { .. } => "bad_position",
            HistoryError::Unavailable(_) => "unavailable",
        }
    }
}

/// Where history lives.
pub trait History: Send + Sync + 'static {
    /// Append `data` to `channel`. Returns its position. (Relays publish
    /// and append in one step; see `Relay::publish_history`.)
    fn append<'a>(
        &'a self,
        channel: &'a str,
        data: &'a Utf8Bytes,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Position, HistoryError>>;

    /// `since: None`: the last `limit` publications. `since: Some(p)`: every
    /// publication after `p` (at most `limit`), or `recovered: false`.
    fn read<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>>;

    /// Like [`History::read`], but never creates anything: a channel without
    /// stored history reads as empty at offset 0 with an empty epoch
    /// ([`Position::none`]). `history` frames and `GET /api/history` peek, so
    /// reading a million unknown names leaves no key and no memory behind.
    /// (A positioned `subscribe` reads, so that its channel gets an epoch.)
    fn peek<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>>;
}

impl Position {
    /// The position of a channel that has no history: offset 0, empty epoch.
    pub fn none() -> Position {
        Position {
            offset: 0,
            epoch: String::new(),
        }
    }
}

/// A fresh epoch: short, random, unique enough per channel lifetime.
pub fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Select what to return for a read, given the retained window.
/// `retained` is in offset order and ends at `top.offset`.
pub fn page_from(
    retained: impl DoubleEndedIterator<Item = Publication> + ExactSizeIterator,
    top: Position,
    since: Option<&Position>,
    limit: usize,
) -> Result<HistoryPage, HistoryError> {
    let Some(since) = since else {
        let skip = retained.len().saturating_sub(limit);
        return Ok(HistoryPage {
            publications: retained.skip(skip).collect(),
            top,
            recovered: true,
        });
    };
    let lost = |top: Position| HistoryPage {
        publications: Vec::new(),
        top,
        recovered: false,
    };
    if since.epoch != top.epoch {
        return Ok(lost(top));
    }
    if since.offset > top.offset {
        return Err(HistoryError::BadPosition {
            offset: since.offset,
            top: top.offset,
        });
    }
    let missed = (top.offset - since.offset) as usize;
    if missed > retained.len() || missed > limit {
        return Ok(lost(top));
    }
    let skip = retained.len() - missed;
    Ok(HistoryPage {
        publications: retained.skip(skip).collect(),
        top,
        recovered: true,
    })
}

struct Stream {
    epoch: String,
    top: u64,
    entries: VecDeque<Publication>,
    expires: Instant,
}

/// History kept in this process: a bounded ring per channel that expires
/// `history_ttl_seconds` after the channel's last publication.
pub struct MemoryHistory {
    /// One lock for all channels: appends are short and never await.
    streams: Mutex<HashMap<String, Stream>>,
    /// Where keyed publishes were appended, per (channel, scoped key); taken
    /// before `streams` when both are held.
    keys: Mutex<KeyWindow<Position>>,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        MemoryHistory::with_idempotency(
            crate::idempotency::DEFAULT_WINDOW,
            crate::idempotency::DEFAULT_MAX_BYTES,
        )
    }
}

impl MemoryHistory {
    pub fn new() -> Self {
        MemoryHistory::default()
    }

    /// Keys of keyed publishes are kept for `window`, in at most `max_bytes`.
    pub fn with_idempotency(window: Duration, max_bytes: usize) -> Self {
        MemoryHistory {
            streams: Mutex::new(HashMap::new()),
            keys: Mutex::new(KeyWindow::new(window, max_bytes)),
        }
    }

    /// Append like [`History::append`]; with a scoped idempotency `key`
    /// already used on this channel, append nothing and return the position
    /// it got then (and `true`). Check and append are one step.
    pub fn append_once(
        &self,
        channel: &str,
        data: &Utf8Bytes,
        options: &ChannelOptions,
        key: Option<&str>,
        event: Option<&std::sync::Arc<str>>,
    ) -> (Position, bool) {
        let Some(key) = key else {
            return (self.append_now(channel, data, options, event), false);
        };
        let mut keys = self.keys.lock();
        let h = keys.hash(&[channel, key]);
        if let Some(position) = keys.get(h) {
            return (position.clone(), true);
        }
        let position = self.append_now(channel, data, options, event);
        keys.insert(h, position.clone(), position.epoch.len());
        (position, false)
    }

    fn append_now(
        &self,
        channel: &str,
        data: &Utf8Bytes,
        options: &ChannelOptions,
        event: Option<&std::sync::Arc<str>>,
    ) -> Position {
        self.with_stream(channel, options, true, |s| {
            s.top += 1;
            s.entries.push_back(Publication {
                offset: s.top,
                data: data.clone(),
                event: event.cloned(),
            });
            while s.entries.len() > options.history_size {
                s.entries.pop_front();
            }
            Position {
                offset: s.top,
                epoch: s.epoch.clone(),
            }
        })
    }

    fn with_stream<T>(
        &self,
        channel: &str,
        options: &ChannelOptions,
        touch: bool,
        f: impl FnOnce(&mut Stream) -> T,
    ) -> T {
        let ttl = Duration::from_secs(options.history_ttl_seconds.max(1));
        let now = Instant::now();
        let mut streams = self.streams.lock();
        if streams.len() > 1024 && streams.len().is_power_of_two() {
            streams.retain(|_, s| s.expires > now);
        }
        let stream = streams
            .entry(channel.to_string())
            .or_insert_with(|| Stream {
                epoch: new_epoch(),
                top: 0,
                entries: VecDeque::new(),
                expires: now + ttl,
            });
        if stream.expires <= now {
            *stream = Stream {
                epoch: new_epoch(),
                top: 0,
                entries: VecDeque::new(),
                expires: now + ttl,
            };
        }
        if touch {
            stream.expires = now + ttl;
        }
        f(stream)
    }
}

impl History for MemoryHistory {
    fn append<'a>(
        &'a self,
        channel: &'a str,
        data: &'a Utf8Bytes,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Position, HistoryError>> {
        let position = self.append_now(channel, data, options, None);
        Box::pin(async move { Ok(position) })
    }

    fn read<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>> {
        let page = self.with_stream(channel, options, false, |s| {
            let top = Position {
                offset: s.top,
                epoch: s.epoch.clone(),
            };
            page_from(s.entries.iter().cloned(), top, since, limit)
        });
        Box::pin(async move { page })
    }

    fn peek<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        _options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>> {
        let page = {
            let streams = self.streams.lock();
            match streams.get(channel) {
                Some(s) if s.expires > Instant::now() => {
                    let top = Position {
                        offset: s.top,
                        epoch: s.epoch.clone(),
                    };
                    page_from(s.entries.iter().cloned(), top, since, limit)
                }
                _ => page_from(
                    std::iter::empty::<Publication>(),
                    Position::none(),
                    since,
                    limit,
                ),
            }
        };
        Box::pin(async move { page })
    }
}

impl MemoryHistory {
    /// Channels this history holds state for (expired ones included until swept).
    pub fn channel_count(&self) -> usize {
        self.streams.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: usize) -> ChannelOptions {
        ChannelOptions {
            history_size: size,
            history_ttl_seconds: 60,
            ..ChannelOptions::default()
        }
    }

    fn data(i: u64) -> Utf8Bytes {
        Utf8Bytes::from(format!("{{\"i\":{i}}}"))
    }

    #[tokio::test]
    async fn recovery_returns_exactly_the_missed_publications() {
        let h = MemoryHistory::new();
        let o = opts(10);
        let mut positions = Vec::new();
        for i in 1..=5 {
            positions.push(h.append("c", &data(i), &o).await.expect("append"));
        }
        assert_eq!(positions[4].offset, 5);
        let page = h
            .read("c", Some(&positions[1]), 100, &o)
            .await
            .expect("read");
        assert!(page.recovered);
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        let page = h
            .read("c", Some(&positions[4]), 100, &o)
            .await
            .expect("read");
        assert!(page.recovered && page.publications.is_empty());
    }

    #[tokio::test]
    async fn peeking_at_unknown_channels_creates_nothing() {
        let h = MemoryHistory::new();
        let o = opts(10);
        for i in 0..1000 {
            let page = h
                .peek(&format!("nobody-{i}"), None, 10, &o)
                .await
                .expect("peek");
            assert!(page.publications.is_empty());
            assert_eq!(page.top, Position::none());
        }
        let since = Position {
            offset: 3,
            epoch: "gone".into(),
        };
        let page = h.peek("nobody", Some(&since), 10, &o).await.expect("peek");
        assert!(!page.recovered);
        assert_eq!(h.channel_count(), 0);
        // A channel with history peeks like it reads.
        let first = h.append("c", &data(1), &o).await.expect("append");
        h.append("c", &data(2), &o).await.expect("append");
        let page = h.peek("c", Some(&first), 10, &o).await.expect("peek");
        assert!(page.recovered);
        assert_eq!(page.publications.len(), 1);
        assert_eq!(
            h.read("c", None, 10, &o).await.expect("read"),
            h.peek("c", None, 10, &o).await.expect("peek")
        );
        assert_eq!(h.channel_count(), 1);
    }

    #[test]
    fn a_keyed_append_happens_once_per_channel_and_key() {
        let h = MemoryHistory::new();
        let o = opts(10);
        let (first, dup) = h.append_once("c", &data(1), &o, Some("api\nk"), None);
        assert!(!dup);
        let (again, dup) = h.append_once("c", &data(1), &o, Some("api\nk"), None);
        assert!(dup);
        assert_eq!(again, first);
        // Other channels and other keys are independent.
        assert!(!h.append_once("d", &data(1), &o, Some("api\nk"), None).1);
        let (other, dup) = h.append_once("c", &data(2), &o, Some("api\nk2"), None);
        assert!(!dup);
        assert_eq!(other.offset, 2);
        assert_eq!(h.append_once("c", &data(3), &o, None, None).0.offset, 3);
    }

    #[tokio::test]
    async fn a_publications_event_name_is_kept_with_it() {
        let h = MemoryHistory::new();
        let o = opts(10);
        let event: std::sync::Arc<str> = std::sync::Arc::from("update");
        h.append_once("c", &data(1), &o, None, Some(&event));
        h.append_once("c", &data(2), &o, None, None);
        let page = h.read("c", None, 10, &o).await.expect("read");
        let events: Vec<_> = page.publications.iter().map(|p| p.event.clone()).collect();
        assert_eq!(events, [Some(event), None]);
    }

    #[tokio::test]
    async fn trimmed_history_or_another_epoch_is_not_recovered() {
        let h = MemoryHistory::new();
        let o = opts(3);
        let first = h.append("c", &data(1), &o).await.expect("append");
        for i in 2..=6 {
            h.append("c", &data(i), &o).await.expect("append");
        }
        let page = h.read("c", Some(&first), 100, &o).await.expect("read");
        assert!(!page.recovered);
        assert!(page.publications.is_empty());
        let other = Position {
            offset: 5,
            epoch: "nope".into(),
        };
        assert!(
            !h.read("c", Some(&other), 100, &o)
                .await
                .expect("read")
                .recovered
        );
        let ahead = Position {
            offset: 99,
            epoch: first.epoch.clone(),
        };
        assert!(matches!(
            h.read("c", Some(&ahead), 100, &o).await,
            Err(HistoryError::BadPosition { .. })
        ));
        let last = h.read("c", None, 2, &o).await.expect("read");
        let offsets: Vec<u64> = last.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![5, 6]);
    }
}
