//! Small records that outlive a connection and its node: a front-end's
//! session state that any node must find after the node holding it died
//! (a Socket.IO session's rooms, for connection-state recovery).
//!
//! A record is a one-entry history channel in the node's history store
//! (Redis in a cluster, memory on a lone node), under a name no client can
//! subscribe to (it starts with a control character, which channel names
//! may not contain), expiring `ttl` after it was last written.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Node;
use crate::history::HistoryError;
use crate::policy::ChannelOptions;

fn record_channel(name: &str) -> String {
    format!("\u{1}record:{name}")
}

fn record_options(ttl: Duration) -> ChannelOptions {
    ChannelOptions {
        history_size: 1,
        history_ttl_seconds: ttl.as_secs().max(1),
        ..ChannelOptions::default()
    }
}

impl Node {
    /// Write record `name` (replacing what it held); it expires `ttl` after
    /// this write unless written again.
    pub async fn put_record(
        &self,
        name: &str,
        data: &str,
        ttl: Duration,
    ) -> Result<(), HistoryError> {
        let data = Utf8Bytes::from(data.to_string());
        self.history
            .append(&record_channel(name), &data, &record_options(ttl))
            .await
            .map(|_| ())
    }

    /// The record `name` holds, if it has not expired.
    pub async fn get_record(&self, name: &str) -> Result<Option<Utf8Bytes>, HistoryError> {
        let options = record_options(Duration::from_secs(1));
        let page = self
            .history
            .peek(&record_channel(name), None, 1, &options)
            .await?;
        Ok(page.publications.into_iter().last().map(|p| p.data))
    }
}
