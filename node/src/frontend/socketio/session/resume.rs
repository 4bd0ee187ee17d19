//! A session's side of connection-state recovery ([`super::super::recovery`]):
//! CONNECT with or without a claim, joins positioned in history rooms, the
//! record of the session's rooms kept alive, written off or left to expire.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message, reasons, SioSession};
use crate::delivery::Position;
use crate::frontend::socketio::recovery::{new_pid, record_name, Claim, Record};
use crate::frontend::socketio::wire::Packet;
use crate::node::{JoinRequest, MeshError};

/// A namespace the session is recoverable in.
pub(crate) struct Resumable {
    pid: String,
    window: Duration,
    /// When its record was last written.
    saved: Instant,
}

impl Resumable {
    /// While the socket lives, its record outlives the next refresh by the
    /// window: written every quarter window, it expires 1¼ windows after.
    fn refresh_every(&self) -> Duration {
        self.window / 4
    }
}

impl SioSession {
    /// The user a record names: the token's subject, when it verified.
    fn record_user(&self) -> Option<String> {
        let state = self.conn.state.lock();
        state.authenticated.then(|| state.root_id.to_string())
    }

    /// The rooms `claim` may take back: its record's, when the record is
    /// alive, was not closed, and is this namespace's and this user's.
    async fn restore(&self, nsp: &str, claim: &Claim) -> Option<Vec<String>> {
        let data = match self.node.get_record(&record_name(&claim.pid)).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::info!(error = %e, "socket.io recovery record unreadable");
                return None;
            }
        };
        let record: Record = serde_json::from_str(data.as_str()).ok()?;
        let user = self.record_user();
        let same_user = record.user.is_none() || record.user == user;
        (!record.closed && record.nsp == nsp && same_user).then_some(record.rooms)
    }

    /// Does history hold everything each room published after its position
    /// in `since`? (Rooms without history, or without a position, cannot
    /// say what they missed.)
    async fn covered(&self, rooms: &[String], since: &HashMap<String, Position>) -> bool {
        for room in rooms {
            let options = self.node.config.namespaces.options(room);
            let Some(from) = since.get(room).filter(|_| options.history()) else {
                return false;
            };
            let limit = options.history_size;
            match self.node.history(room, Some(from), limit, &options).await {
                Ok(page) if page.recovered => {}
                _ => return false,
            }
        }
        true
    }

    /// CONNECT to a recovery namespace: with a claim its record covers, its
    /// rooms are joined from the claimed positions, and the reply keeps its
    /// `pid` when history covered everything (`socket.recovered`); else the
    /// default rooms, and a new `pid`.
    pub(super) async fn connect_resumable(
        &mut self,
        nsp: String,
        window: Duration,
        claim: Option<Claim>,
        defaults: Vec<String>,
    ) {
        let mut restored = match &claim {
            Some(c) => self.restore(&nsp, c).await,
            None => None,
        };
        if let (Some(rooms), Some(c)) = (&restored, &claim) {
            if !self.covered(rooms, &c.positions()).await {
                // A fresh start, as a new connection: nothing from before.
                restored = None;
            }
        }
        let mut attempts = Vec::new();
        if let (Some(rooms), Some(claim)) = (restored, &claim) {
            attempts.push((rooms, claim.positions(), Some(claim.pid.clone())));
        }
        attempts.push((defaults, HashMap::new(), None));
        let client = self.conn.client_id.clone();
        let mut last_error = None;
        for (channels, since, old_pid) in attempts {
            self.offsets.start(&client, &nsp);
            self.resumable.insert(
                nsp.clone(),
                Resumable {
                    pid: String::new(),
                    window,
                    saved: Instant::now(),
                },
            );
            let version = self.version;
            let mut chosen = None;
            let claimed = old_pid.is_some();
            let reply = |recovered: bool| {
                let pid = match old_pid {
                    Some(pid) if recovered => pid,
                    _ => new_pid(),
                };
                let packet = Packet::connected_with_pid(version, &nsp, &client, &pid);
                chosen = Some(pid);
                Some(Utf8Bytes::from(message(&packet)))
            };
            let since = claimed.then_some(&since);
            match self.join_rooms(&nsp, &channels, since, reply).await {
                Ok(()) => {
                    if let (Some(m), true) = (&self.metrics, claim.is_some()) {
                        let old = claim.as_ref().map(|c| c.pid.as_str());
                        let result = if chosen.as_deref() == old {
                            "recovered"
                        } else {
                            "fresh"
                        };
                        m.recoveries.with_label_values(&[&nsp, result]).inc();
                    }
                    if let (Some(pid), Some(r)) = (chosen, self.resumable.get_mut(&nsp)) {
                        r.pid = pid;
                    }
                    self.entered(nsp.clone(), channels.into_iter().collect::<BTreeSet<_>>());
                    self.save(&nsp).await;
                    return;
                }
                Err(e) => {
                    self.offsets.end(&client, Some(&nsp));
                    self.resumable.remove(&nsp);
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            self.error(reasons::CONNECT_REFUSED);
            self.connect_error(&nsp, &e.to_string());
        }
    }

    /// Join `channels` of `nsp`. In a recovery namespace the history rooms
    /// are joined positioned (from `since`, when recovering) and their
    /// positions tracked for the offsets; `reply(recovered)` is queued
    /// before anything from them, `recovered` saying whether every room
    /// recovered from `since`.
    pub(super) async fn join_rooms(
        &mut self,
        nsp: &str,
        channels: &[String],
        since: Option<&HashMap<String, Position>>,
        reply: impl FnOnce(bool) -> Option<Utf8Bytes>,
    ) -> Result<(), MeshError> {
        let none = HashMap::new();
        let plain_request = |channels| JoinRequest {
            channels,
            positioned: false,
            since: &none,
        };
        if !self.resumable.contains_key(nsp) {
            let request = plain_request(channels);
            return self.node.join(&self.conn, request, |_| reply(false)).await;
        }
        let options = &self.node.config.namespaces;
        let (history, plain): (Vec<String>, Vec<String>) = channels
            .iter()
            .cloned()
            .partition(|c| options.options(c).history());
        if history.is_empty() {
            if channels.is_empty() {
                if let Some(frame) = reply(since.is_some()) {
                    self.node.send(&self.conn, frame);
                }
                return Ok(());
            }
            return self
                .node
                .join(&self.conn, plain_request(&plain), |_| reply(false))
                .await;
        }
        let fresh: Vec<String> = plain
            .iter()
            .filter(|c| !self.conn.is_member(c))
            .cloned()
            .collect();
        if !plain.is_empty() {
            self.node
                .join(&self.conn, plain_request(&plain), |_| None)
                .await?;
        }
        let (offsets, client) = (self.offsets.clone(), self.conn.client_id.clone());
        let all_history = plain.is_empty();
        let request = JoinRequest {
            channels: &history,
            positioned: true,
            since: since.unwrap_or(&none),
        };
        let joined = self
            .node
            .join(&self.conn, request, |joined| {
                let mut recovered = since.is_some() && all_history;
                for (c, top, covered) in &joined.positions {
                    let from = since.and_then(|s| s.get(c));
                    let at = match (covered, from) {
                        (Some(true), Some(p)) => p,
                        _ => {
                            recovered = false;
                            top
                        }
                    };
                    offsets.set(&client, nsp, c, at);
                }
                reply(recovered)
            })
            .await;
        if joined.is_err() && !fresh.is_empty() {
            self.node.leave(&self.conn, &fresh, || None).await;
        }
        joined
    }

    /// Write `nsp`'s record: its rooms now, alive for 1¼ windows.
    pub(super) async fn save(&mut self, nsp: &str) {
        let Some(r) = self.resumable.get(nsp) else {
            return;
        };
        let ttl = r.window + r.refresh_every();
        self.write(nsp, false, ttl).await;
    }

    async fn write(&mut self, nsp: &str, closed: bool, ttl: Duration) {
        let record = Record {
            nsp: nsp.to_string(),
            user: self.record_user(),
            rooms: self
                .connected
                .get(nsp)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            closed,
        };
        let Some(r) = self.resumable.get_mut(nsp) else {
            return;
        };
        r.saved = Instant::now();
        let name = record_name(&r.pid);
        let data = serde_json::to_string(&record).unwrap_or_default();
        if let Err(e) = self.node.put_record(&name, &data, ttl).await {
            tracing::info!(error = %e, "socket.io recovery record not written");
        }
    }

    /// Rooms of `nsp` left: no longer in its offsets or its record.
    pub(super) async fn left(&mut self, nsp: &str, channels: &[String]) {
        if self.resumable.contains_key(nsp) {
            self.offsets.forget(&self.conn.client_id, nsp, channels);
            self.save(nsp).await;
        }
    }

    /// Keep the records of a live socket alive.
    pub(super) async fn refresh(&mut self) {
        let due: Vec<String> = self
            .resumable
            .iter()
            .filter(|(_, r)| r.saved.elapsed() >= r.refresh_every())
            .map(|(n, _)| n.clone())
            .collect();
        for nsp in due {
            self.save(&nsp).await;
        }
    }

    /// `nsp` ends: left on purpose (a DISCONNECT, a close packet), its
    /// record is closed; else (the transport was lost) it stays recoverable
    /// for the window from now.
    pub(super) async fn end_resumable(&mut self, nsp: &str, on_purpose: bool) {
        let Some(window) = self.resumable.get(nsp).map(|r| r.window) else {
            return;
        };
        self.write(nsp, on_purpose, window).await;
        self.resumable.remove(nsp);
        self.offsets.end(&self.conn.client_id, Some(nsp));
    }

    /// The connection ends: every recovery namespace ends with it.
    pub(super) async fn close_resumable(&mut self) {
        let namespaces: Vec<String> = self.resumable.keys().cloned().collect();
        for nsp in namespaces {
            self.end_resumable(&nsp, self.closed_by_client).await;
        }
        self.offsets.end(&self.conn.client_id, None);
    }
}
